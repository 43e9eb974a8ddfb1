mod chaos;
mod evaluate;
mod inspect;
mod train;
