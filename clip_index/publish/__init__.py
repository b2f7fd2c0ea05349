"""Report and publish steps: the run report, the dataset card and the Hugging Face Hub."""
