//! OpenLava job starter and esub (issue 6): `bsub -a 'berth(IMG.sqsh)'` jobs run in the image.
