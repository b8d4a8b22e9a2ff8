"""Files people attach: what kind each is and its text, with no platform in it."""
