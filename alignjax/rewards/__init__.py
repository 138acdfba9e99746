"""What scores a sampled answer: programmatic reward functions, reward models and judges."""
