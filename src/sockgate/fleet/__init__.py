"""The fleet: collector, shipper, central store, signed policy bundles."""
