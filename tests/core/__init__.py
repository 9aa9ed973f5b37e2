"""Oracle tests of the pure core: numpy, finite-difference and brute-force oracles; the import graph; the README examples."""
