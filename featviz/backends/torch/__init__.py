"""The torch backend: the Gumbel-softmax relaxation loop and exact scoring of hard tokens."""
