"""The embed benchmark: forward-pass ceiling vs clip-index's embed step vs clip-retrieval."""
