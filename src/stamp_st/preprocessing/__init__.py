"""From sample to model input: gene vocabulary and tokens, image crops, spatial groups."""
