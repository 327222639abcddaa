"""The `face_parsing_f1` evaluate module (a folder `evaluate.load` accepts by path)."""
