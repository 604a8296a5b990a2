"""Generation counters: the first bump creates the row, later ones increment it, through
the ORM session (admin services) and through a Core connection (pool health) alike."""
from sqlalchemy import text

from gateway import generations
from gateway.extensions import db


def test_first_bumps_create_the_rows_and_later_ones_increment(app):
    with app.app_context():
        db.session.execute(text("DELETE FROM generations"))
        db.session.commit()
        generations.bump(generations.AUTH)
        db.session.commit()
        generations.bump(generations.AUTH)
        db.session.commit()
        with db.engine.begin() as conn:
            generations.bump(generations.ROUTING, conn)
        rows = dict(db.session.execute(text("SELECT name, value FROM generations")).all())
        assert rows == {"auth": 2, "routing": 1}
