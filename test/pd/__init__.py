"""PD tests: a package, so its clusters (package-scoped fixtures) stop after it."""
