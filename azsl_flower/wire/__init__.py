"""What crosses Flower between the service and the owners: schema, codec, error codes,
crypto primitives and the two end points' channels."""
