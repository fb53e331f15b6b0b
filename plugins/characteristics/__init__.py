"""Trust characteristics: one module per characteristic, instantiated from conf/characteristic/<name>.yaml."""
