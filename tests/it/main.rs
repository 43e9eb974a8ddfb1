mod chaos;
mod evaluate;
mod inspect;
mod train;
mod weights;
