"""The JAX backend: a pure-JAX forward with the same hook points, the jitted relaxation
step and the jitted exact scorer."""
