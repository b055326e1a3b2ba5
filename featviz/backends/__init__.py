"""Where the search's arithmetic runs: the row score shared by every backend
(``objective``), the relaxation's clock (``schedule``), the choice of backend and precision
(``choose``), and the torch and JAX implementations of relaxation and exact scoring."""
