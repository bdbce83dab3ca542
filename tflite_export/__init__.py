"""Keras -> TFLite export, validation and benchmarks for pruned models."""
