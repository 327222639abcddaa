"""Release: convert the official checkpoints (`conversion`), download them (`hub`), export them (`onnx_export`),
and publish converted models with their cards (`publishing`, `model_card`)."""
