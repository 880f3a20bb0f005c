"""Data governance (layer 5): patch scoring (Eq. 2), class evidence, governor loading / import / head fit /
training, quality, and the on-the-fly selector. The selection strategies are ``lightning_juicer.selection``."""
