"""Nuonuo open platform (诺诺开放平台, 诺税通 nuonuo.OpeMplatform.*) adapter."""
