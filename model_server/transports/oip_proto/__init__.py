"""Generated Open Inference Protocol stubs (make protos); not edited by hand."""
