"""The compartment's side: zygotes, the setup -> seal -> serve loop, sealed imports and stdio."""
