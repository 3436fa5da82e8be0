"""pytest hooks for the whole suite."""


def pytest_collection_modifyitems(config, items):
    # The tests marked slow start first (in their collected order), so that on make test's two
    # workers the suite does not end with one long test running alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
