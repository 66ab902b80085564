"""What tests, benchmarks and the demo share: the tiny-model builder, the one-at-a-time reference, sample images."""
