"""How leads come in: the HTTP intake, the marketplace table poll, ``import`` of exported files,
and the silence watch on arrivals."""
