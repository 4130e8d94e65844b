"""Challenge responders: put a key authorization where the CA will look, and take it away."""
