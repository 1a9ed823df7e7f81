"""Benchmarks and experiments (`hatchery bench`, `bench-sync`, `bench-reward`, `loadtest`,
`bench-grpo`, `ablation`, `breakdown`) and the naive OpenES baseline they compare against.
Nothing in a service imports this package; `pip install 'hatchery[bench]'` adds what it needs."""
