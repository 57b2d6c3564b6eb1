"""The sampler and the distributions it draws from: arrays in, arrays out
(pure numpy, no model)."""
