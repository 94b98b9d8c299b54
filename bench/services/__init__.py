"""The processes a benchmark starts, all on 127.0.0.1, and how it runs and watches them: the
registry that stops every child (`processes`), the CPUs and ports they get, what /proc says of
them and of the rest of the machine (`machine`), nginx in its roles (`nginx`), mitmdump with and
without the addon (`mitmdump`), and the Debian packages and tools the bench installs (`install`)."""
