"""What to read from the model: the spec grammar (``spec``), the target algebra and each
kind's reading (``core``), direction files, exact reading of text (``read``), and the
direct logit effect."""
