"""The Keras UNet, its losses and metrics, and training."""
