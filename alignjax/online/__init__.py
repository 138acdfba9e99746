"""The methods that sample from the policy while training (MO-ODPO, online CUT): their
batch sources, which roll out the current policy, score or judge the answers and build
training batches. Their registry entries are in `alignjax.train.methods`."""
