"""The report component: the run report of a published output folder.
(No `from __future__ import annotations`: KFP reads these annotations at runtime.)
"""

from kfp.dsl import HTML, Artifact, Input, Markdown, Output


def report(
    output_dir: str,
    index: Input[Artifact],
    report: Output[Markdown],
    report_html: Output[HTML],
) -> None:
    """Write the run report: counts, failures by reason, index quality, sample queries.

    Args:
        output_dir: The published folder (report.md and report.html are written there too).
        index: The index step's record (orders the report after it).
        report: Markdown report (run table, failures, sample queries), shown in the Vertex UI.
        report_html: Self-contained HTML report with a thumbnail grid of sample query results.
    """
    from clip_index.publish.report import run_report

    result = run_report(output_dir)
    for artifact, text in ((report, result.markdown), (report_html, result.html)):
        with open(artifact.path, "w", encoding="utf-8") as f:
            f.write(text)
        artifact.metadata.update(result.summary)
