"""Built-in backends. Others register in the entry-point group ``hsync.backends``."""
