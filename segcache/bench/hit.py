"""segcache bench hit (being written)."""


def register(subcommands):
    pass
