"""`featviz query` (filled in by the dreaming engine)."""


def add_query_parser(sub, common):
    return None
