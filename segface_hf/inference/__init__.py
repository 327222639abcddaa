"""Inference: find and frame the faces of a photo (`faces`), parse them and write the outputs (`predict`), draw the
results (`visualization`), and the `image-segmentation` pipeline registration (`pipeline`)."""
