"""Load step: read an image-URL dataset and write it as URL shards plus a manifest."""
