"""ternary-bench: benchmark harness and synthetic model generator (outside the runtime)."""
