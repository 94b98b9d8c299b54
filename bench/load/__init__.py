"""The load a scenario puts on a proxy: `wrk` runs of a fixed length (`wrk`), a small asyncio
HTTP/1.1 client for what wrk cannot express (`client`), and whole-body downloads hashed as they
arrive (`downloads`)."""
