"""Running pipelines: compile, run locally (kfp.local), submit to Vertex AI, plan a run, the
demo and its sample data."""
