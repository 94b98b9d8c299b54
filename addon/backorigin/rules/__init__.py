"""The rules: the RoutingRule model, rules files, plan_get (what a GET does), where a rule points, import and export."""
