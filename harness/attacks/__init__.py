"""Attacks: each takes the defended model, a batch in [0,1], labels, its parameters and a
noise source for its own randomness, and returns adversarial inputs inside the budget."""
