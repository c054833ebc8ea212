"""The pipeline's stages, one module each; `gateway.pipeline.default_stages` orders them."""
