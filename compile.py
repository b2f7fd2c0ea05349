"""Compile every clip-index pipeline to YAML with the given image tag.

    python compile.py --output-dir compiled --image-tag "$COMMIT_SHA" \
        --image-repo us-docker.pkg.dev/PROJECT/clip-index

Exits non-zero on any failure (same flags as `clip-index compile`).
"""

import sys

from clip_index.cli import main

if __name__ == "__main__":
    sys.exit(main(["compile", *sys.argv[1:]]))
