"""A reward plug-in whose module reaches outside at import, before any audit hook is installed."""

try:
    with open("/etc/hostname") as f:
        f.read()
    READ_AT_IMPORT = 1.0
except OSError:
    READ_AT_IMPORT = 0.0


def read_at_import(prompts, completions, **kwargs):
    """1.0 for every sample if the module could read outside its folder while it was imported."""
    return [READ_AT_IMPORT] * len(completions)
