mod evaluate;
mod inspect;
mod train;
