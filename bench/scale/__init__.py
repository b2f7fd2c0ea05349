"""Scale rehearsals: the whole pipeline through kfp.local on many shards."""
