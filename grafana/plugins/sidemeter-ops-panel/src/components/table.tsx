import React from 'react';
import { css, cx } from '@emotion/css';
import { GrafanaTheme2 } from '@grafana/data';
import { useStyles2 } from '@grafana/ui';

const getStyles = (theme: GrafanaTheme2) => ({
  // The wrapper scrolls sideways so a narrow panel keeps every column readable.
  wrap: css({ overflowX: 'auto', maxWidth: '100%' }),
  table: css({
    width: '100%',
    borderCollapse: 'collapse',
    fontSize: theme.typography.bodySmall.fontSize,
    'th, td': {
      textAlign: 'left',
      padding: theme.spacing(0.5, 1),
      borderBottom: `1px solid ${theme.colors.border.weak}`,
      whiteSpace: 'nowrap',
      verticalAlign: 'top',
    },
    th: { color: theme.colors.text.secondary, fontWeight: theme.typography.fontWeightMedium },
  }),
  wrapCell: css({ whiteSpace: 'normal !important' as 'normal', minWidth: 160, maxWidth: 360 }),
});

export function useTableStyles() {
  return useStyles2(getStyles);
}

export function Table({
  className,
  label,
  children,
}: {
  className?: string;
  label: string;
  children: React.ReactNode;
}) {
  const s = useTableStyles();
  return (
    <div className={s.wrap}>
      <table className={cx(s.table, className)} aria-label={label}>
        {children}
      </table>
    </div>
  );
}
