"""The generative model: instrument physics now; decoder, GON and prior arrive with issue 4."""
