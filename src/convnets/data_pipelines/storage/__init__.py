"""Where shard folders live: a local folder, an HTTP(S) server or an object store, and the node-local cache."""
