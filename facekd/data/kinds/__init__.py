"""One module per data kind; each registers itself with `facekd.data.registry.register_kind`."""
