"""lrkv.dashboards: Pareto fronts, figures and rank recommendations read from the sweep stores."""
